"""Command-line interface (`anyalign ...`)."""
