"""The inspection application and the device agent (later issues). Never imports torch."""
