"""Face pipeline: read media, detect faces, find 68 landmarks, align, crop, derive facial regions."""
