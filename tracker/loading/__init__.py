"""Loading safely, below the tasks: built-in tiny models and sample data, the cache, the Hub probe,
a model's own code only when asked, weights that can be loaded, and the precisions a device runs.
"""
