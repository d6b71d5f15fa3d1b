"""The operator terminal: a local web page an operator runs a shift from (``autoweld-terminal``).

:mod:`~autoweld.terminal.service` inspects, signals the PLC and writes the ledger on one worker
thread; :mod:`~autoweld.terminal.watcher` feeds it from a camera folder;
:mod:`~autoweld.terminal.app` is the FastAPI app and its one plain page, behind
:mod:`~autoweld.terminal.security` (credentials and roles, the Host/Origin guard, headers). The web app needs the
``terminal`` extra (FastAPI, uvicorn); the station and watcher do not. Never imports torch.
"""

from autoweld.terminal.service import Outcome, Station, StationConfig
from autoweld.terminal.watcher import FolderWatcher, WatchConfig

__all__ = ["FolderWatcher", "Outcome", "Station", "StationConfig", "WatchConfig"]
