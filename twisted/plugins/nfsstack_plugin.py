"""The twistd plugin: ``twistd -n nfsstack [options]`` (options and service maker in nfsstack.tap)."""

from twisted.application.service import ServiceMaker

serviceMaker = ServiceMaker("nfsstack", "nfsstack.tap", "NFSv3 server: portmapper, mountd, nfsd, NLM, NSM.", "nfsstack")
