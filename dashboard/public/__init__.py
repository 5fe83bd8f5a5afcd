"""Pages for learners and the public: one-click unsubscribe and certificate verification."""
