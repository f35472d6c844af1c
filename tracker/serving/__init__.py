"""Servers as a source of work: ``tracker serve-bench`` measures an OpenAI-compatible server under
load (``server``: attached or launched; ``workload``: the prompts; ``loadgen``: the requests;
``figures``: per request, per token and latency; ``bench``: windows, runs and the best level)."""
