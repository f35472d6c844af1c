"""Which model and which dataset a run uses, and where each comes from: built-in, a local folder or
file, a model kept in MLflow, or the Hugging Face Hub; and whether a model is prompted for the task.
"""
