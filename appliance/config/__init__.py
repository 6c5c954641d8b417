"""Typed, strict configuration: YAML file + environment overrides + embedded defaults.

One YAML document (config/infraspectre.yaml by convention) holds a section per component:
`eventbus`, `agent`, `storage`, `capture`, `wal`, `log` (appliance/logformat.py). Each component
owns the dataclass of its own section and builds it with `build_section`; this module owns only
the mechanism:

- every field has a default, so every command runs with no file at all;
- an unknown key anywhere is an error naming its full key path (`eventbus.tls.kye`);
- a value of the wrong type is an error naming the key path, the expected and the found type;
- environment variables override file values; each component declares which variable maps to
  which key path (the seed's names: BUS_SERVER_PORT, BUS_OVERLOAD, IS_WAL_PATH, IS_CERT_DIR...);
  their string values are parsed according to the field's type.

Everything is validated when the command starts, never on first use.
"""

from appliance.config.loader import (
    KNOWN_SECTIONS,
    ConfigError,
    build_section,
    load_document,
)
from appliance.config.sections import STORAGE_ENV, CertFiles, StorageConfig

__all__ = [
    "KNOWN_SECTIONS",
    "STORAGE_ENV",
    "CertFiles",
    "ConfigError",
    "StorageConfig",
    "build_section",
    "load_document",
]
