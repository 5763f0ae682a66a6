"""Images: the infotext every PNG carries, and the store that writes them."""
