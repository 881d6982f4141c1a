"""experiments package (API stated below as it lands)."""
