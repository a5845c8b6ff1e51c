"""``python -m attnplug.ui`` (what ``attnplug ui`` runs)."""

from attnplug.ui import main

main()
