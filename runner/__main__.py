from runner.cli import main

if __name__ == "__main__":  # a spawned tracking process imports this module too
    main()
