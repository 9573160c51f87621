"""The lifecycle domain, pure: stages, registry, ledger, decisions on verified inputs, documents, ProofPacks."""
