"""QR code readers (station camera)."""
