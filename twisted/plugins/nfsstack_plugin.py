"""The twistd plugin: ``twistd -n nfsstack [options]``."""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class NfsStackServiceMaker:
    tapname = "nfsstack"
    description = "NFSv3 server stack: portmapper, mountd, nfsd, nlockmgr, status."

    @property
    def options(self):
        from nfsstack.service import Options

        return Options

    def makeService(self, options):
        from nfsstack.service import makeService

        return makeService(options)


serviceMaker = NfsStackServiceMaker()
