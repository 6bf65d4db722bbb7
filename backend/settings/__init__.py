"""Settings: the one table of keys and defaults (`table`) and the files that hold them (`store`)."""
from backend.settings.store import USER_FILE, Settings, write_yaml_atomic
from backend.settings.table import (DEFAULTS, GENERATION_KEYS, LOAD_KEYS, MODEL_KEYS, PROMPT_KEYS, SERVER_KEYS,
                                    GenerationParams, LoadSettings, ModelSettings, PromptSettings, ServerSettings,
                                    SettingsError, defaults_yaml)

__all__ = ["USER_FILE", "Settings", "write_yaml_atomic", "DEFAULTS", "GENERATION_KEYS",
           "LOAD_KEYS", "MODEL_KEYS", "PROMPT_KEYS", "SERVER_KEYS", "GenerationParams", "LoadSettings", "ModelSettings",
           "PromptSettings", "ServerSettings", "SettingsError", "defaults_yaml"]
