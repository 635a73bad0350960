"""Model downloads from Hugging Face and ModelScope (or their mirrors), with no Qt and no torch.

Public surface: DownloadManager (a queue; add / pause / resume / cancel through DownloadJob; progress as
DownloadSnapshot), make_backend (listing and search through each hub's official client), select_files,
TokenStore, the catalog, and DownloadError for everything that goes wrong.
"""

from app.downloader.backends import SOURCES, Backend, RepoFile, RepoListing, SearchResult, make_backend
from app.downloader.catalog import CatalogEntry, CatalogError, Fit, fit, load_catalog
from app.downloader.errors import DownloadError
from app.downloader.folders import default_dest, is_staging, read_manifest
from app.downloader.manager import DownloadJob, DownloadManager, DownloadRequest, ManagerConfig
from app.downloader.progress import DownloadSnapshot, FileProgress, JobState, human_bytes
from app.downloader.selection import FileChoice, select_files, variants
from app.downloader.tokens import TokenStore
from app.downloader.transfer import RetryPolicy

__all__ = [
    "SOURCES", "Backend", "RepoFile", "RepoListing", "SearchResult", "make_backend",
    "CatalogEntry", "CatalogError", "Fit", "fit", "load_catalog",
    "DownloadError", "default_dest", "is_staging", "read_manifest",
    "DownloadJob", "DownloadManager", "DownloadRequest", "ManagerConfig",
    "DownloadSnapshot", "FileProgress", "JobState", "human_bytes",
    "FileChoice", "select_files", "variants", "TokenStore", "RetryPolicy",
]
