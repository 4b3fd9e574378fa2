"""Operations on top of the engine: dead-letter browsing and replay, status, payload sweep, demo."""

__all__: list[str] = []
