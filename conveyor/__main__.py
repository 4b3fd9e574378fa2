"""``python -m conveyor`` is the ``conveyor`` command."""

from conveyor.consumer.cli import main

if __name__ == "__main__":
    main()
