"""proofs_check package (API stated below as it lands)."""
