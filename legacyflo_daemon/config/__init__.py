"""The configuration: a TOML file read and checked by ``load`` into ``schema``'s dataclasses."""
