"""The lab: a Coreflux-compatible broker and a multi-host cluster on one Linux machine."""
