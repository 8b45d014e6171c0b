"""The local backend: nfsd's exports are directories of this machine (filesystem.py: LocalFilesystem)."""
