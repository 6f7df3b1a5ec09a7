"""talkcli: offline talking-head videos from one face photo and a speech recording."""

__version__ = "0.1.0"
