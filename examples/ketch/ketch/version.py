"""Bumped by every commit on master (see examples/build_repos.py), so `/` tells them apart."""
VERSION = "1"
