"""One blueprint per resource; register_blueprints wires them all."""

from app.routes import chat, completions, health, models


def register_blueprints(app) -> None:
    for module in (health, models, chat, completions):
        app.register_blueprint(module.bp)
