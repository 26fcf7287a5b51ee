"""The state home: catalog database, content-addressed blobs, index files, models, secrets."""
