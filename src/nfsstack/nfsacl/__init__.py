"""NFS_ACL (program 100227 version 3): POSIX ACLs over NFSv3, beside nfsd on its port."""
