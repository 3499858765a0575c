"""Model-card templates (Jinja2 + Hub YAML front matter), one per zoo family; rendered by :mod:`zoo.cards`."""
