"""The lean runtime: engine runners and the Inspector. Never imports torch."""
