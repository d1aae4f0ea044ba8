#!/usr/bin/env bash
# The MLflow dashboard on ./mlflow.db, bound to 127.0.0.1. Usage: scripts/dashboard.sh [--port N]
exec python -m runner.dashboard "$@"
