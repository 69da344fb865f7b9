"""RFID card readers."""
