"""Model bundle: the contract between export and runtime (see docs/bundle.md). No torch."""
