"""testbed package (API stated below as it lands)."""
