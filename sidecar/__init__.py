"""mm-sidecar: Mattermost outgoing webhooks, extended, as a daemon beside the server."""

__version__ = "0.1.0"
