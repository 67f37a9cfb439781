"""Format adapters: other APIs' requests and responses to and from Anthropic Messages.

Pure functions over parsed JSON, testable without HTTP; the streaming halves live in
the Rust core (``ethereal._native``).
"""
