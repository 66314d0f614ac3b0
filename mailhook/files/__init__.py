"""The file door (`mailhook ingest`): paths read into deliveries, extracted in a pool, stored with a progress bar."""
