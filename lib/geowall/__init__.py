"""geowall: does activation-manifold geometry predict SAE scaling, layer by layer?"""

__version__ = "0.1.0"
