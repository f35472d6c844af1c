"""Where the electricity comes from: the country whose grid mix sets the carbon intensity.

The location is always explicit; nothing is geolocated over the network. In order: the
``--country`` argument, CodeCarbon's own configuration (``country_iso_code`` in
``.codecarbon.config`` or ``CODECARBON_COUNTRY_ISO_CODE``), else ``DEFAULT_COUNTRY``.
An optional intensity in gCO2eq/kWh overrides the country's mix.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from tracker.errors import ConfigError

logger = logging.getLogger(__name__)

# The paper's measurements were taken in AWS us-west (Oregon); USA is the documented default.
DEFAULT_COUNTRY = "USA"

CountrySource = Literal["argument", "codecarbon-config", "default"]


@dataclass(frozen=True)
class Location:
    country_iso_code: str
    country_source: CountrySource
    intensity_override_g_per_kwh: float | None = None

    @property
    def country_grid_intensity_g_per_kwh(self) -> float:
        return country_mixes()[self.country_iso_code]["carbon_intensity"]

    @property
    def intensity_source(self) -> str:
        """How the carbon intensity was chosen, for the provenance tag."""
        if self.intensity_override_g_per_kwh is not None:
            return f"user override: {self.intensity_override_g_per_kwh:g} gCO2eq/kWh"
        mix = country_mixes()[self.country_iso_code]
        return (f"CodeCarbon yearly grid mix of {mix['country_name']} ({self.country_iso_code}, "
                f"{mix.get('year', '?')}): {mix['carbon_intensity']:g} gCO2eq/kWh")


@functools.lru_cache(maxsize=1)
def country_mixes() -> dict[str, dict]:
    """CodeCarbon's per-country energy mix, keyed by ISO 3166 alpha-3 code."""
    text = resources.files("codecarbon").joinpath("data/private_infra/global_energy_mix.json").read_text()
    return json.loads(text)


def resolve_location(country: str | None, intensity_g_per_kwh: float | None = None) -> Location:
    source: CountrySource = "argument"
    if country is None:
        from codecarbon.core.config import get_hierarchical_config

        configured = get_hierarchical_config().get("country_iso_code")
        country, source = (configured, "codecarbon-config") if configured else (DEFAULT_COUNTRY, "default")
        if source == "default":
            _warn_once(f"no --country (country=) given and none in CodeCarbon's config: using {DEFAULT_COUNTRY}; "
                       "pass your grid's ISO 3166 alpha-3 code")
    code = country.strip().upper()
    if code not in country_mixes():
        from tracker.errors import did_you_mean

        raise ConfigError(
            f"unknown country code '{country}': use an ISO 3166 alpha-3 code such as USA, FRA or DEU."
            f"{did_you_mean(code, list(country_mixes()))}"
        )
    if intensity_g_per_kwh is not None and not intensity_g_per_kwh >= 0:
        raise ConfigError(f"--carbon-intensity must be a number of gCO2eq/kWh >= 0, got {intensity_g_per_kwh}")
    return Location(code, source, intensity_g_per_kwh)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Said once a process: a notebook measuring in a loop hears it once, not at every cell."""
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)
