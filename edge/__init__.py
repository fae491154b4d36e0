"""edgefleet's appliance: the disk store, the content server, and the libraries
(origins, configuration) that the fill job and the steering service reuse."""

__version__ = "0.1.0"
