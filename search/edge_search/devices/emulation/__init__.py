"""The emulation model behind `EmulatedDevice`: op classes and graph costs (`opclass`), fitting a
profile's calibration (`calibration`) and the reference suite it is measured on (`reference_suite`)."""
