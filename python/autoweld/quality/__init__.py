"""Quality records: the signed, hash-chained ledger and the PLC link. Never imports torch."""
