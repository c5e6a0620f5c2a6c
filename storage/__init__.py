"""Storage: the Zarr feature store and the layout of every artifact under the storage root."""

from storage.feature_store import FeatureArray
from storage.layout import StorageLayout, config_hash

__all__ = ["FeatureArray", "StorageLayout", "config_hash"]
