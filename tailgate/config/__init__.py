"""Configuration: the frozen model, the HuJSON loader and validator, and hot reload."""

from tailgate.config.defaults import DEMO_CONFIG, NEW_INSTANCE_CONFIG
from tailgate.config.grants import grants_admin, parse_capability, src_matches
from tailgate.config.hujson import HujsonError
from tailgate.config.loader import LoadResult, load_config, load_config_file, validate_for_save
from tailgate.config.model import Config
from tailgate.config.units import format_dollars, parse_dollars, parse_rate
from tailgate.config.watch import ConfigWatcher

__all__ = [
    "DEMO_CONFIG",
    "NEW_INSTANCE_CONFIG",
    "Config",
    "ConfigWatcher",
    "HujsonError",
    "LoadResult",
    "format_dollars",
    "grants_admin",
    "load_config",
    "load_config_file",
    "parse_capability",
    "parse_dollars",
    "parse_rate",
    "src_matches",
    "validate_for_save",
]
