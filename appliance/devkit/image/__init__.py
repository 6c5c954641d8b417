"""Development kit: the image build bench."""
