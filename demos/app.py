"""Launcher of the attnplug web UI from a source checkout: ``python demos/app.py [--host 127.0.0.1] [--port 7860]
[--share]`` is ``attnplug ui``. The app is :mod:`attnplug.ui`."""

from attnplug.ui import main

if __name__ == "__main__":
    main()
