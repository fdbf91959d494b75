"""The package version, in a module of its own so that the lowest layers can record it without importing the
package facade."""
__version__ = "0.1.0"
