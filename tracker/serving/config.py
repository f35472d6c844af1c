"""The one validated configuration of ``tracker serve-bench``: each option declared once."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from tracker.errors import ConfigError
from tracker.options import counted, flag, option, parse_values

APIS = ("completions", "chat")
# The built-in serving model: a tiny Llama with a chat template (random weights), built offline.
BUILTIN_SERVE_MODEL = "builtin-tiny-chat"
DEFAULT_CONCURRENCY = ("1", "4", "16")


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    endpoint: str | None = option(help="an OpenAI-compatible server on this machine to attach to, e.g. "
                                       "http://127.0.0.1:8000 (or use --launch)")
    launch: str | None = option(help="a command that starts the server, with {host}, {port}, {model} and any "
                                     "--server-setting filled in, e.g. 'transformers serve --host {host} "
                                     "--port {port} {model}'; stopped at the end, its log kept")
    model: str = option(BUILTIN_SERVE_MODEL, param="always",
                        help=f"what {{model}} in --launch becomes: a folder, a Hub id, or {BUILTIN_SERVE_MODEL} "
                             f"(default; a tiny model built offline). Attached, the server's own model is used")
    server_pid: int | None = option(minimum=1, help="the server's process id, when the process listening on "
                                                    "the port cannot be seen (checked against it when it can)")
    server_setting: tuple[str, ...] = option((), param="never",
                                             help="NAME=VALUE pairs (comma-separated) filled into --launch's "
                                                  "{NAME}, logged as params; NAME=A|B|C searches the values: "
                                                  "a server is launched for each combination and swept")
    task: str = option("summarization", param="always",
                       help="the task whose prompts are sent and scored as it scores them (default summarization)")
    dataset: str | None = option(param="always",
                                 help="the task's dataset name, a CSV/JSONL file, a ShareGPT-style JSON of "
                                      "conversations, or builtin (default: the task's)")
    n_prompts: int = option(200, minimum=1, param="always",
                            help="distinct prompts, sent in turn and again from the start (default 200)")
    output_tokens: str = option("64", param="always",
                                help="output tokens asked per request: a number (the server is asked for "
                                     "exactly that many when it can be), or 'data' (from each reference's "
                                     "length, a cap) (default 64)")
    api: str = option("completions", param="always", help="completions or chat (default completions)")
    concurrency: tuple[str, ...] = option(DEFAULT_CONCURRENCY, param="always",
                                          help="closed-loop levels: users each with one request in flight "
                                               "(default 1,4,16), or auto: search for the concurrency with the "
                                               "lowest carbon per token within the latency targets")
    max_concurrency: int = option(256, minimum=1, param="when_set",
                                  help="the highest concurrency --concurrency auto tries (default 256)")
    request_rate: tuple[str, ...] = option((), param="always",
                                           help="open-loop levels instead: Poisson arrivals per second, e.g. 2,8")
    warmup_requests: int = option(4, minimum=0, param="always",
                                  help="requests that end before a level is measured, not counted; at least the "
                                       "level's concurrency (default 4)")
    windows: int = option(3, minimum=1, param="always",
                          help="measured windows per level, back to back in the steady state: their spread "
                               "gives the intervals (default 3)")
    min_window_s: float = option(5.0, param="always", help="each window lasts at least this long (default 5)")
    min_window_requests: int = option(4, minimum=0, param="always",
                                      help="... and until this many requests ended in it (default 4)")
    max_window_s: float = option(300.0, help="a window ends after this long whatever ended in it (default 300)")
    request_timeout_s: float = option(120.0, param="always",
                                      help="a request unfinished after this long counts as timed out (default 120)")
    slo_ttft_ms: float | None = option(param="when_set",
                                       help="latency target: time to first token at p90, in ms (for goodput and "
                                            "the best level)")
    slo_tpot_ms: float | None = option(param="when_set",
                                       help="latency target: time per output token at p90, in ms")
    prefill_split: bool = option(False, param="when_set",
                                 help="also measure each level with one output token, for the energy of prefill "
                                      "and of decode apart (default false)")
    startup_timeout_s: float = option(300.0, help="how long a launched server has to answer (default 300)")
    experiment: str = option("serving", help="MLflow experiment (default serving)")
    country: str | None = option(help="ISO 3166 alpha-3 code of the grid (default: CodeCarbon config, else USA)")
    carbon_intensity: float | None = option(param="when_set", param_name="carbon_intensity_override_g_per_kwh",
                                            help="gCO2eq/kWh, overrides the country's grid mix")
    seed: int = option(0, minimum=0, param="always", help="random seed of prompt order and arrivals (default 0)")

    @classmethod
    def parse(cls, **raw: Any) -> ServeConfig:
        values = parse_values(cls, raw)
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        from tracker.tasks import get_task

        get_task(self.task)
        if (self.endpoint is None) == (self.launch is None):
            raise ConfigError("give the server: --endpoint URL of one that runs, or --launch COMMAND to start one "
                              "(not both)")
        if self.server_pid is not None and self.endpoint is None:
            raise ConfigError("--server-pid goes with --endpoint (a launched server's process is known)")
        if self.api not in APIS:
            raise ConfigError(f"unknown --api '{self.api}': use completions or chat")
        if self.output_tokens != "data":
            from tracker.options import integer

            integer("output_tokens", self.output_tokens, 1)
        self.levels()  # checks the numbers
        self.settings()
        for name in ("min_window_s", "max_window_s", "request_timeout_s", "startup_timeout_s"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise ConfigError(f"{flag(name)} must be a number of seconds > 0, got {value:g}")
        if self.max_window_s < self.min_window_s:
            raise ConfigError(f"--max-window-s ({self.max_window_s:g}) is below --min-window-s "
                              f"({self.min_window_s:g})")
        for name in ("slo_ttft_ms", "slo_tpot_ms", "carbon_intensity"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < math.inf:
                raise ConfigError(f"{flag(name)} must be a finite number >= 0, got {value:g}")

    def levels(self) -> list[Any]:
        """The load levels in the order given: concurrencies, or request rates when those are given."""
        from tracker.options import integer
        from tracker.serving.loadgen import Level

        if self.request_rate:
            if self.concurrency != DEFAULT_CONCURRENCY:
                raise ConfigError("give closed-loop levels (--concurrency) or open-loop ones (--request-rate), "
                                  "not both")
            rates = []
            for text in self.request_rate:
                try:
                    rate = float(text)
                except ValueError:
                    rate = math.nan
                if not 0 < rate < math.inf:
                    raise ConfigError(f"--request-rate takes requests per second > 0, got '{text}'")
                rates.append(Level(rate=rate))
            return rates
        if not self.concurrency:
            raise ConfigError("--concurrency needs at least one level, e.g. 1,4,16, or auto")
        if self.searches_concurrency:
            return []  # chosen as the search goes (tracker.serving.search)
        return [Level(concurrency=integer("concurrency", text, 1)) for text in self.concurrency]

    @property
    def searches_concurrency(self) -> bool:
        if "auto" not in self.concurrency:
            return False
        if len(self.concurrency) > 1 or self.request_rate:
            raise ConfigError("--concurrency auto searches the levels itself: give it alone, without other levels "
                              "or --request-rate")
        return True

    def settings(self) -> dict[str, tuple[str, ...]]:
        """--server-setting as NAME -> its values (one, or the alternatives of NAME=A|B); each NAME
        must appear in --launch as {NAME}."""
        settings = {}
        for pair in self.server_setting:
            name, sep, value = pair.partition("=")
            if not sep or not name.strip():
                raise ConfigError(f"--server-setting takes NAME=VALUE (or NAME=A|B to search), got '{pair}'")
            settings[name.strip()] = tuple(v.strip() for v in value.split("|"))
        if settings and self.launch is None:
            raise ConfigError("--server-setting fills --launch's template: it goes with --launch")
        for name in settings:
            if f"{{{name}}}" not in (self.launch or ""):
                raise ConfigError(f"--server-setting {name}: --launch has no {{{name}}} to fill")
        return settings

    def setting_grid(self) -> list[dict[str, str]]:
        """Every combination of the settings' values, in the order given ([{}] without settings)."""
        settings = self.settings()
        return [dict(zip(settings, values, strict=True)) for values in itertools.product(*settings.values())]

    def params(self) -> dict[str, Any]:
        params = counted(self, "param")
        if self.request_rate:  # open-loop levels: the concurrency's default is not what ran
            params.pop("concurrency")
        params.update({f"server.{k}": "|".join(v) for k, v in self.settings().items()})
        return {k: ",".join(v) if isinstance(v, tuple) else v for k, v in params.items() if v not in ((), None)}
