"""The provider contract adapters implement, the entry-point registry, and an in-memory provider."""
