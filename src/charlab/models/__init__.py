"""Model references, chat formatting and generation backends."""
