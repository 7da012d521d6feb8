"""`eelight eval`: what is scored (a run folder or an export, `target.py`) and the command that
scores it on the benchmark library `eelight.eval`, writes predictions and logs to MLflow
(`command.py`). Above `training` and `export` in the layers: it loads their checkpoints."""
