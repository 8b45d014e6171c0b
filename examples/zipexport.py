"""Serve the files of a zip archive over NFS, read only.

    NFSSTACK_ZIP=photos.zip twistd -n nfsstack --backend zipexport:factory
"""

import datetime
import os
import zipfile

from nfsstack.nfs3.tree import Node, ReadOnlyTree


class ZipTree(ReadOnlyTree):
    def __init__(self, table, path):
        super().__init__(table)
        self.archive = zipfile.ZipFile(path)

    def nodes(self):
        for info in self.archive.infolist():
            when = datetime.datetime(*info.date_time).timestamp()
            kind, mode = ("dir", 0o555) if info.is_dir() else ("file", 0o444)
            yield info.filename.rstrip("/"), Node(kind, info.file_size, mode, int(when * 1e9))

    def read_file(self, path, offset, count):
        with self.archive.open(path) as f:
            f.seek(offset)
            return f.read(count)


def factory(table):
    return ZipTree(table, os.environ.get("NFSSTACK_ZIP", "export.zip"))
